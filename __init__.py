"""curate: preference data in, a published preference dataset out, reproducibly.

The repository's top-level folders are this package's subpackages (`pyproject.toml` maps the root to `curate`):
`curate.pipelines` (CLI, config, runner), `curate.stages`, `curate.judges`, `curate.schemas`, `curate.flows`
(Prefect) and `curate.engines`. A plugin imports from `curate.*`, never from a bare top-level name.
"""
