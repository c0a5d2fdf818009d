"""ServerApp: the fedsim strategy named in the run config, driving Flower rounds."""

from fedsim.flower import make_server_app

app = make_server_app()
