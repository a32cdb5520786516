"""`nodeaudit demo`: an embedded local API server, simulated AKS nodes and the real operator."""
