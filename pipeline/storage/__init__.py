"""The store and the tables: Zarr arrays and codecs, Parquet tables, durable files, locks, faults, ownership."""
