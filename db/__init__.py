"""The SQLite side of tune-firehose: schema, migrations, row building, the store and the worker."""
