from driver.main import main

raise SystemExit(main())
