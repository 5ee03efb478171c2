import sys

from agent.commands import main

sys.exit(main())
