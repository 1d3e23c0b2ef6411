"""Every stimulus the cells saw: the sessions of one Allen Brain Observatory experiment container.

One container is one imaging plane of one mouse, recorded in three sessions with the same cells
(same ``cell_specimen_id``; not every cell is found in every session):

- ``three_session_A``: drifting gratings, natural movies one and three, spontaneous activity;
- ``three_session_B``: static gratings, natural scenes, natural movie one, spontaneous activity;
- ``three_session_C``: locally sparse noise, natural movies one and two, spontaneous activity.

Modules: :mod:`.layout` (the sessions' stimulus schedules), :mod:`.synthetic` (the simulated
container in Allen's NWB layout), :mod:`.responses` (every stimulus as model-space images and
responses of the studied session's cells).
"""
