"""The web demo (`caphuman demo`): a gradio page over CapHumanSession. See caphuman.demo.app."""
