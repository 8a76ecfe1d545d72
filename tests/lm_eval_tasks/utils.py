"""Loads local_mc.jsonl (next to this file) for dirroute_local_mc.yaml, without `datasets`'
download machinery or cache."""

import json
import os

import datasets


def load(**kwargs):
  del kwargs  # lm-eval passes the task's metadata
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "local_mc.jsonl")
  with open(path, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
