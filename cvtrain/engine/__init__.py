"""Running a spec: ``trainer`` (Config -> Lightning Trainer), ``callbacks``, ``checkpoints`` (every checkpoint and
weights read and write) and ``rundir`` (which folder a run writes to, decided once by rank 0).

The engine sits above data, models and tasks: it imports them, they never import it.
"""
