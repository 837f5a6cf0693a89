"""The checkpoint folder: its contract (files, ClassifierInfo) and atomic writes."""
