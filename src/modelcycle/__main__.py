from modelcycle.cli import main

main()
