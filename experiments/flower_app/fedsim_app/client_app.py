"""ClientApp: the fedsim client algorithm named in the run config, on this node's partition."""

from fedsim.flower import make_node_client_app

app = make_node_client_app()
