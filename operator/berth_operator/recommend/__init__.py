"""`berth recommend`: the inference recommender (search.py decides, emulate.py measures)."""
