"""arena-pref application layer: the `arena-pref` command line."""
