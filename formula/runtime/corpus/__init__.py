"""Reading, scrubbing, filtering and splitting agent session transcripts.

Plain data code used by the corpus and pairs steps; nothing here knows about the store.
"""
