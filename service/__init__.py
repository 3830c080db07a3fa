"""uniserve's service: settings and the closed error set here; the serving core (`core/`),
its stores (`store/`), the HTTP layer (`api/`), offline jobs (`jobs/`), benchmarks (`bench/`)
and the command line (`cli/`) in sub-packages."""
