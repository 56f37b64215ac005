"""Building the seed corpus in data/seed/ from the reviewable sources in corpus/."""
