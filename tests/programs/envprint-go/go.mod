module envprint

go 1.19
