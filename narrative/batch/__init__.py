"""Build-time content generation: quest text from designer specs, incremental and resumable.

Pipeline (one item = one quest spec)::

    spec (YAML) + lore entries it names  ->  prompt (tokens)  ->  JSON under a grammar
    derived from the output schema  ->  pydantic validation (bounded retries)  ->
    post-checks  ->  atomic write of ``quests/<id>.json``  ->  manifest record

Modules: `spec` (input schema and loader), `output` (output schema and the
per-spec JSON schema the grammar is built from), `prompt`, `checks`
(post-checks), `manifest` (hashes, atomic writes), `runner` (the batch job and
the one-item job the bridge uses), `report`, `importers` (CDDA, Flare).
"""
