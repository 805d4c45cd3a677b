from charwise.cli import main

main()
