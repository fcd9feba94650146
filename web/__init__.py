"""The web client: the phone itself. Its code is JavaScript (``web/src``, ``web/static``, bundled from the pinned
npm packages in ``web/package-lock.json``); this package builds it, serves it, and drives it as a device:

- :mod:`web.build`: ``node build.mjs`` plus the model, its card and ``contract.json`` (written from ``contract/``,
  so the page's schema, key layout and fingerprint are Python's, not a second copy);
- :mod:`web.server`: a static server on 127.0.0.1 (``--host`` for a phone on the LAN) with the page's settings;
- :mod:`web.device`: headless Chromium driving the served page through its file input, as a person would;
- ``python -m web`` (``./run web``): ``build``, ``serve``, ``vectorize``.

Imports: contract, models (for the committed model file); nothing of the edge, the job or TensorFlow.
"""
