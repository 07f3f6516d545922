from edgeinfer.cli.main import main

main()
