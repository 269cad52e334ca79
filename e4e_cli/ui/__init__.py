"""`e4e ui`: a local editing page (FastAPI + a small page of our own, no internet needed)."""
