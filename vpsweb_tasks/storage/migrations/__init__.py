"""SQL migrations, one numbered file per schema version and backend."""
