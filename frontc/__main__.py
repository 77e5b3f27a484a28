from frontc.cli import main

main()
