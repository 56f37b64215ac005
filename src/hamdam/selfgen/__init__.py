"""Self-generated rounds: the model writes new training dialogues, filtered so that it does not collapse."""
