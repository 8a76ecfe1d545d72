"""Taking trained models out of this project: Hugging Face folders (`hf.py`), an
lm-evaluation-harness model (`lm_eval_adapter.py`) and params-only workdirs (`params_only.py`).

Import direction: this package may import model/, data/ and analysis/load.py; nothing in
model/, train/ or data/ imports it.
"""
