"""Ray orchestration of many scans: Hub discovery, a download stage, a scan stage, one DB writer.

`workers` imports `catalog` and `db`; `catalog` imports neither (docs/ARCHITECTURE.md).
"""
