"""Where documents go: stdout, rotating files, Elasticsearch with an on-disk spool."""
