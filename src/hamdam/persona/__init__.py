"""Whose voice: persona cards (who the loved one was, how they spoke), consent and retirement."""
