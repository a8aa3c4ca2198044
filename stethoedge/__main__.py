"""Allow ``python -m stethoedge``."""
from stethoedge.cli import main

raise SystemExit(main())
