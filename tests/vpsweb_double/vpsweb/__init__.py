"""A test double of the ``vpsweb`` package (github.com/OCboy5/vpsweb), importable when
tests/vpsweb_double is on sys.path (the ``vpsweb_double`` fixture of test_translation.py).

Written from reading VPSWeb's source, not copied from it. It reproduces what the adapter
relies on:

* ``core/workflow.py``: ``TranslationWorkflow.__init__``'s parameters and how it picks its
  configuration (src/vpsweb/core/workflow.py @01bb951, ``__init__`` and
  ``_get_workflow_mode``): a ``config_facade`` argument, else the global ConfigFacade if
  one is initialised, else the legacy ``config_or_facade`` + ``providers_config`` +
  ``workflow_mode`` (all three required); with a facade, the mode is the facade's
  ``get_workflow_info()["mode"]``, whatever ``workflow_mode`` says. ``execute(input_data,
  show_progress=True)`` calls ``progress_callback(step_name, {"status": "running" |
  "completed", ...})`` around each of its three steps, and ``cancel()`` sets a flag.
* ``services/config``: ``ConfigFacade.get_workflow_info()`` reads the main config's
  ``workflow_mode``; ``initialize_config_facade`` / ``get_config_facade`` (RuntimeError
  until initialised) (src/vpsweb/services/config/facade.py @0c317ef).
* ``models/translation.py``: ``TranslationInput`` with ``source_lang`` / ``target_lang``
  of its ``Language`` enum (English, Chinese, Polish).
"""
