"""The corpora hamdam ships, as the package ``hamdam.corpus_files``: ``hamdam init`` copies them into a new workspace."""
