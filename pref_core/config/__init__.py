"""The run configuration: the schema (`RunConfig`), loading it, its cross-field rules, the fields as data, every
choice's allowed values, the run key."""
