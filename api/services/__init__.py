"""What several routes share, apart from the route modules themselves."""
