"""Decoding: what comes out of the model. The one decoding routine, metrics, long audio and its cues. Imports data
only (audio, features, where speech is)."""
