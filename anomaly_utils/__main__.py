import sys

from anomaly_utils.pipeline.cli import main

sys.exit(main())
