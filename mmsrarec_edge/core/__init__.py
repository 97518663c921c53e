"""The torch-free core: everything the trainer/exporter and the edge runtime must agree on, in one place below both.

- `prompt`, `context`: the recommender's prompt builder and its retrieval context (history + collaborative keywords);
- `summary_prompts`, `keywords`, `keyword_store`: the summarizer's prompts, the keyword parser and the keyword store;
- `bundle`: the bundle format (layout, manifest schema and verification, allowed file types, safetensors I/O);
- `scores`: the paper's score p(yes) / (p(yes) + p(no)); `candidates`: the typed candidate spec of a request;
- `retrieval` (hnswlib index), `imaging` (image loading/preprocessing), `io_utils` (atomic writes), `errors`.

Layering (import-linter contracts in pyproject.toml, run by `make test`): the core imports nothing else of the package
and never torch, transformers, peft, trl or optimum; data, training, export, runtime and serving all sit above it.
"""
