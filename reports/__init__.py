"""The static HTML directory of the catalog: `build_site(scans, out_dir)` (see `reports.build`).

Reads scans, writes files; never writes to the catalog. Every page renders a typed context
(`reports.contexts`) through an autoescaping Jinja2 template: model names are untrusted.
"""
