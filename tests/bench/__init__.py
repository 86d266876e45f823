"""`make bench`: every benchmark arm in one run, each figure beside its target."""
