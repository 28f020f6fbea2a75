from sklicense.cli import main

main()
