"""Aegis reference agent and fleet simulator.

A plain Python package (standard library + paho-mqtt): it must run on machines
that have no Django and no access to the control plane's code.
"""

__version__ = "0.1.0"
