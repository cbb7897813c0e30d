from hamachi.cli.app import main

main()
