"""What is kept on disk: atomic files, the session report (JSON + Parquet), timeseries and
stored runs under `.llem/`."""
