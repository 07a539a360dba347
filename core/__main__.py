from bgremove.cli import main

raise SystemExit(main())
