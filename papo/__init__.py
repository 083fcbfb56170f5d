"""papo-hub: PAPO (Perception-Aware Policy Optimization) for VLMs on TRL / PEFT."""

__version__ = "0.1.0"
