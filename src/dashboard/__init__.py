"""The dashboard: a Panel app, a client of the REST API (``python -m dashboard``).

``client.py`` talks to the API; ``state.py`` is a session's one state (the token, the last
poll, the followed job; its poll the only timer); ``components/`` holds one view per tab,
bound to it; ``notices.py`` the banner; ``charts.py`` the interactive Bokeh charts; ``app.py``
the shell (template, header, tabs).
"""
