"""The dashboard: a Panel app, a client of the REST API (``python -m dashboard``).

``client.py`` talks to the API; ``components/`` holds one view per tab; ``charts.py`` the
interactive Bokeh charts; ``app.py`` the shell (template, header, tabs, timers).
"""
