"""`twinlm serve`: an HTTP API (OpenAI-compatible completions and embeddings, fill-mask, classify, answer, tag,
score) and a web playground over the models given at start, with request batching, continuous batching of
generation streams, limits and Prometheus metrics. Needs the ``serve`` extra (fastapi, uvicorn, prometheus-client).

Modules, one job each: ``app`` (create_app: the FastAPI app, middleware, static playground), ``routes`` (the
endpoints), ``schemas`` (request/response models), ``models`` (which model serves what; the inference calls),
``batcher`` (gathers concurrent requests into batches), ``generation`` (the continuous-batching decoding loop),
``limits`` (the limits and the input checks), ``errors`` (the one error shape), ``metrics`` (Prometheus collectors).
"""
