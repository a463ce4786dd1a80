"""adactr: CTR prediction with instance-adaptive parameters."""

__version__ = "0.1.0"
