"""The `slimvit` commands, one module per stage; `exporter.cli` imports them and is the entry point.

- `common`: the `app` and its `policy` / `bundle` sub-apps, consoles, progress bars, checkpoint loading.
- `export`: `variants`, `export`, `demo` and the bundle and precision tables they print.
- `bundle`: `verify`, `sign`, `keygen`, `bundle install-android`, `bundle install-ios`.
- `train`: `train` (and SiT with `--recipe sit`).
- `policy`: `select`, `simulate`, `policy vectors`, `policy update`, `policy check`.
- `measure`: `profile`, `ingest`, `report`.
- `search`: `search` (ViT-Slim).

Each command parses its flags and calls one library function; heavy libraries are imported inside
the commands so that `slimvit --help` stays fast.
"""
