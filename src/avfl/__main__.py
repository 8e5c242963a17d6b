from avfl.cli import main

raise SystemExit(main())
