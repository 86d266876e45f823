"""Network code shared by webhook delivery and image fetching: the URL guard (urls), the
pinned transport (pinned) and image references (image_refs)."""
