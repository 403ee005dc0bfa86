"""Reading meibography datasets, fold files and building training/evaluation samples."""
